//! Field layouts beyond the shapes that share templates (process-wide
//! state: this file holds the only test of its binary).

use cachette_core::ServingFields;
use http::{HeaderMap, HeaderName, HeaderValue, header};

#[test]
fn shapes_beyond_the_shared_ones_are_served_the_same_and_weigh_their_template() {
    let layout = |n: usize| {
        let mut stored = HeaderMap::new();
        let name = HeaderName::from_bytes(format!("x-shape-{n}").as_bytes()).unwrap();
        stored.append(name.clone(), HeaderValue::from(n));
        stored.append(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        (name, ServingFields::new(&stored).unwrap())
    };
    let (_, first) = layout(0);
    // Far more shapes than are shared (1,024): every one still serves its
    // own fields, in order, with one `age` and one `cache-status`.
    let mut last = None;
    for n in 1..1_200 {
        let (name, fields) = layout(n);
        let map = fields.to_map(HeaderValue::from(3), HeaderValue::from_static("c; hit"));
        assert_eq!(map[&name], n.to_string().as_str());
        assert_eq!(map[header::CONTENT_TYPE], "text/plain");
        assert_eq!(map.len(), 4);
        assert_eq!(map[header::AGE], "3");
        assert_eq!(map["cache-status"], "c; hit");
        last = Some(fields);
    }
    // A template of its own is counted in the entry's weight; a shared
    // one is not.
    let last = last.unwrap();
    assert!(
        last.weight() > first.weight() + 200,
        "{} vs {}",
        last.weight(),
        first.weight()
    );
}
