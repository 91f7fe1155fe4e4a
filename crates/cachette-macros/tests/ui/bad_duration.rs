#[cachette::cached(ttl = "five minutes")]
async fn lookup(id: u64) -> u64 {
    id
}

fn main() {}
