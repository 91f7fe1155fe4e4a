use axum::{Router, extract::Path, routing::get};

struct Db;

#[cachette::cached(ttl = "60s", tags = ["users"])]
async fn user(id: u64, #[cache_ignore] db: &Db) -> Result<String, std::io::Error> {
    let _ = db;
    Ok(format!("user {id}"))
}

#[cachette::cached(key = "item:{id}", cache_none = true)]
async fn item(id: u32) -> Option<u32> {
    (id > 0).then_some(id)
}

struct Repo;

impl Repo {
    #[cachette::cached]
    async fn count(&self, kind: String) -> u64 {
        kind.len() as u64
    }
}

#[cachette::cache_page(ttl = "5m", cache = "pages", vary = ["accept-language"])]
async fn page(Path(id): Path<u64>) -> String {
    format!("page {id}")
}

fn main() {
    let _app: Router = Router::new().route("/{id}", get(page));
    let _ = (user, item, Repo::count, Repo::count_invalidate, Repo::count_invalidate_all, Repo::count_uncached);
    let _ = (user::invalidate, user::invalidate_all, user::uncached, item::invalidate);
}
