#[cachette::cached(ttl = "60s", expire = "5m")]
async fn lookup(id: u64) -> u64 {
    id
}

fn main() {}
