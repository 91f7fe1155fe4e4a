//! Compile tests: correct uses compile; misuse fails with a readable error.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass.rs");
    t.compile_fail("tests/ui/unknown_option.rs");
    t.compile_fail("tests/ui/not_async.rs");
    t.compile_fail("tests/ui/bad_duration.rs");
    t.compile_fail("tests/ui/not_serializable.rs");
    t.compile_fail("tests/ui/unknown_placeholder.rs");
    t.compile_fail("tests/ui/cache_page_not_async.rs");
}
