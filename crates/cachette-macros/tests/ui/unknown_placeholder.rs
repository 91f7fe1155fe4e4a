#[cachette::cached(key = "user:{user_id}")]
async fn lookup(id: u64) -> u64 {
    id
}

fn main() {}
