struct Db;

#[cachette::cached(ttl = "60s")]
async fn lookup(id: u64, db: &Db) -> u64 {
    let _ = db;
    id
}

fn main() {}
