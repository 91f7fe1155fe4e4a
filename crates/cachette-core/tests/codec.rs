//! The binary entry format: round trips, and corrupt input is an error, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cachette_core::{DecodeError, Entry, EntryMeta, Payload, StoredResponse, codec};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::prelude::*;

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn arb_meta() -> impl Strategy<Value = EntryMeta> {
    (
        0u64..4_000_000_000_000,
        0u64..1_000_000_000,
        0u32..1_000_000,
        0u32..1_000_000,
        0u32..100_000,
        any::<bool>(),
        prop::collection::vec("[a-z0-9:_-]{0,20}", 0..4),
        any::<bool>(),
    )
        .prop_map(|(stored, ttl_ms, swr, sie, age, must, tags, persistent)| {
            let mut meta = EntryMeta::new(at_ms(stored), Duration::from_millis(ttl_ms));
            meta.persistent = persistent;
            meta.with_stale_windows(
                Duration::from_secs(swr.into()),
                Duration::from_secs(sie.into()),
            )
            .with_initial_age(Duration::from_secs(age.into()))
            .with_must_revalidate(must)
            .with_tags(tags)
        })
}

fn arb_headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec(("[a-z][a-z0-9-]{0,15}", "[ -~]{0,40}"), 0..8).prop_map(|pairs| {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            let value = HeaderValue::from_str(value.trim()).unwrap();
            headers.append(name, value);
        }
        headers
    })
}

fn arb_payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        (
            100u16..600,
            arb_headers(),
            prop::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(status, headers, body)| Payload::Response(StoredResponse {
                status: StatusCode::from_u16(status).unwrap(),
                headers,
                body: Bytes::from(body),
            })),
        prop::collection::vec(any::<u8>(), 0..512).prop_map(|v| Payload::Value(Bytes::from(v))),
        any::<i64>().prop_map(Payload::Counter),
        prop::collection::vec("[a-z][a-z-]{0,12}", 0..4).prop_map(|names| Payload::Variants(
            names
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
                .collect()
        )),
    ]
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    (arb_payload(), arb_meta()).prop_map(|(p, m)| Entry::new(p, m))
}

proptest! {
    #[test]
    fn round_trips(entry in arb_entry()) {
        let decoded = Entry::decode(entry.encode()).unwrap();
        prop_assert_eq!(decoded, entry);
    }

    #[test]
    fn random_bytes_are_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Entry::decode(Bytes::from(bytes));
    }

    #[test]
    fn random_bytes_after_the_magic_are_an_error(tail in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = codec::MAGIC.to_vec();
        bytes.push(codec::FORMAT_VERSION);
        bytes.extend(tail);
        prop_assert!(Entry::decode(Bytes::from(bytes)).is_err());
    }

    #[test]
    fn any_flipped_byte_is_detected(entry in arb_entry(), index in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut bytes = entry.encode().to_vec();
        let i = index.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(Entry::decode(Bytes::from(bytes)).is_err());
    }

    #[test]
    fn any_truncation_is_detected(entry in arb_entry(), index in any::<prop::sample::Index>()) {
        let bytes = entry.encode();
        let cut = index.index(bytes.len());
        prop_assert!(Entry::decode(bytes.slice(..cut)).is_err());
    }

    #[test]
    fn appended_bytes_are_detected(entry in arb_entry(), extra in prop::collection::vec(any::<u8>(), 1..16)) {
        let mut bytes = entry.encode().to_vec();
        bytes.extend(extra);
        prop_assert!(Entry::decode(Bytes::from(bytes)).is_err());
    }
}

#[test]
fn other_versions_are_refused_by_name() {
    let entry = Entry::value(
        Bytes::from_static(b"v"),
        EntryMeta::new(SystemTime::now(), Duration::from_secs(1)),
    );
    let mut bytes = entry.encode().to_vec();
    bytes[4] = codec::FORMAT_VERSION + 1;
    assert_eq!(
        Entry::decode(Bytes::from(bytes)),
        Err(DecodeError::UnsupportedVersion {
            found: codec::FORMAT_VERSION + 1,
            supported: codec::FORMAT_VERSION
        })
    );
    assert_eq!(
        Entry::decode(Bytes::from_static(
            b"JSON{}.............................................."
        )),
        Err(DecodeError::BadMagic)
    );
}

#[test]
fn decoded_body_is_a_slice_of_the_input() {
    let body = Bytes::from(vec![9u8; 64 * 1024]);
    let entry = Entry::response(
        StoredResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body,
        },
        EntryMeta::new(SystemTime::now(), Duration::from_secs(1)),
    );
    let encoded = entry.encode();
    let decoded = Entry::decode(encoded.clone()).unwrap();
    let body = &decoded.as_response().unwrap().body;
    let range = encoded.as_ptr() as usize..encoded.as_ptr() as usize + encoded.len();
    assert!(
        range.contains(&(body.as_ptr() as usize)),
        "no copy of the body on decode"
    );
}

#[test]
fn more_fields_than_a_header_map_holds_are_an_error_not_a_panic() {
    // A writer with a valid checksum (another version, a bug, a hostile
    // client of a shared Redis) claims 40,000 field names: over the 32,768
    // a `HeaderMap` holds.
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("1"));
    let entry = Entry::response(
        StoredResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
        },
        EntryMeta::new(at_ms(1_700_000_000_000), Duration::from_secs(60)),
    );
    let encoded = entry.encode();
    let record = [0x00, 0xC8, 0x00, 0x01, 0x00, 0x03, b'x', b'-', b'a'];
    let at = encoded
        .windows(record.len())
        .position(|w| w == record)
        .expect("status, count and the first name");
    let mut forged = encoded[..at + 2].to_vec();
    forged.extend_from_slice(&40_000u16.to_be_bytes());
    for n in 0..40_000u32 {
        // Distinct names: values of one name do not count toward the limit.
        let name = format!("x-{n:05}");
        forged.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        forged.extend_from_slice(name.as_bytes());
        forged.extend_from_slice(&[0, 0, 0, 1, b'1']);
    }
    forged.extend_from_slice(&0u32.to_be_bytes());
    let crc = crc32fast::hash(&forged);
    forged.extend_from_slice(&crc.to_be_bytes());
    assert!(Entry::decode(Bytes::from(forged)).is_err());
}
