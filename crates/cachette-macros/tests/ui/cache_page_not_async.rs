#[cachette::cache_page(ttl = "5m")]
fn page() -> &'static str {
    "page"
}

fn main() {}
