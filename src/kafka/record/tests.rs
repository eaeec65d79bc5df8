use super::*;
use prost::Message as _;

#[test]
fn values_are_json_when_they_can_be_and_strings_otherwise() {
    assert_eq!(decode_value(Some(br#"{"a":1}"#), None).get(), r#"{"a":1}"#);
    assert_eq!(decode_value(Some(b"not json"), None).get(), r#""not json""#);
    assert_eq!(
        decode_value(Some(&[0xff, 0x00]), None).get(),
        "\"\u{fffd}\\u0000\""
    );
    assert_eq!(decode_value(None, None).get(), "null");
    let img = crate::proto::ImagePushed {
        service: "a".into(),
        repository: "a".into(),
        tag: Some("v1".into()),
        ..Default::default()
    };
    let json: serde_json::Value =
        serde_json::from_str(decode_value(Some(&img.encode_to_vec()), Some(Kind::Image)).get())
            .unwrap();
    assert_eq!(json["tag"], "v1");
}

fn rec(ts: u64, partition: i32, offset: i64) -> Recorded {
    Recorded {
        ts,
        topic: "t".into(),
        partition,
        offset,
        key: None,
        value: decode_value(Some(b"1"), None),
    }
}

#[test]
fn the_merge_interleaves_partitions_by_time_holding_one_record_each() {
    let mut partitions = vec![
        vec![rec(1, 0, 0), rec(4, 0, 1), rec(4, 0, 2), rec(9, 0, 3)],
        vec![rec(2, 1, 0), rec(4, 1, 1)],
        vec![],
        // Timestamps going back within a partition keep their offset order.
        vec![rec(3, 3, 0), rec(2, 3, 1), rec(10, 3, 2)],
    ];
    for p in &mut partitions {
        p.reverse();
    }
    let pulled = std::cell::RefCell::new(vec![0usize; partitions.len()]);
    let mut emitted = vec![0usize; partitions.len()];
    let mut order = Vec::new();
    let n = merge_by_time(
        partitions.len(),
        |i| {
            pulled.borrow_mut()[i] += 1;
            Ok(partitions[i].pop())
        },
        |r: Recorded| {
            emitted[r.partition as usize] += 1;
            // Every partition is at most one record ahead of what was written.
            for (p, (pulled, emitted)) in pulled.borrow().iter().zip(&emitted).enumerate() {
                assert!(pulled - emitted <= 1, "partition {p}");
            }
            order.push((r.ts, r.partition, r.offset));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(n, 9);
    assert_eq!(
        order,
        [
            (1, 0, 0),
            (2, 1, 0),
            (3, 3, 0),
            (2, 3, 1),
            (4, 0, 1),
            (4, 0, 2),
            (4, 1, 1),
            (9, 0, 3),
            (10, 3, 2)
        ]
    );
}

#[test]
fn the_sorter_orders_a_slice_larger_than_memory_through_spilled_runs() {
    let n = 2 * RUN_RECORDS as u64 + 7;
    let mut sorter = Sorter::default();
    // Timestamps going back, and ties ordered by offset.
    for i in 0..n {
        sorter.push(rec((n - i) / 2, 0, i as i64)).unwrap();
    }
    assert_eq!(sorter.runs.len(), 2, "two full runs spilled");
    assert!(sorter.buffer.len() < RUN_RECORDS);
    let mut out = Vec::new();
    assert_eq!(sorter.finish(&mut out).unwrap(), n);
    let ts: Vec<u64> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["ts"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ts.len() as u64, n);
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "in time order");
    assert_eq!(ts[0], 0);
}
