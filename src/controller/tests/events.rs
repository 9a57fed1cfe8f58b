//! Event fields: one event (series) per distinct note, notes within the API's bound.

use super::super::report::{MAX_EVENT_NOTE_BYTES, event_fields};

#[test]
fn distinct_notes_are_distinct_events_and_repeats_aggregate() {
    let (a1, n1) = event_fields("Failover", "holder a -> b (HolderDead)".into());
    let (a2, _) = event_fields("Failover", "holder b -> a (Pinned)".into());
    let (a3, n3) = event_fields("Failover", "holder a -> b (HolderDead)".into());
    assert_ne!(a1, a2, "different holder changes must not share a series");
    assert_eq!((a1.clone(), n1), (a3, n3), "a repeated note aggregates");
    assert!(a1.starts_with("Failover-") && a1.len() <= 128, "{a1}");
}

#[test]
fn the_digest_is_stable_across_processes() {
    // A restarted controller must compute the same action for the same note.
    let (a, _) = event_fields("Drift", "x".into());
    assert_eq!(a, "Drift-af63f54c86021707");
}

#[test]
fn notes_are_bounded() {
    let (action, note) = event_fields("Drift", "é".repeat(2000));
    assert!(note.len() <= MAX_EVENT_NOTE_BYTES, "{}", note.len());
    assert!(note.ends_with('…'));
    assert!(action.len() <= 128);
    let (_, long_reason) = event_fields(&"R".repeat(300), "n".into());
    assert_eq!(long_reason, "n");
}
