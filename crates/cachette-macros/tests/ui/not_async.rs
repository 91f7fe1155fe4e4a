#[cachette::cached(ttl = "60s")]
fn lookup(id: u64) -> u64 {
    id
}

fn main() {}
