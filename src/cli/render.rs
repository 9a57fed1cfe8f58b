//! What the verbs print (no client): the `feip status` table and the `feip status NAME`
//! details.

use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::NONE;
use super::edit::selector_text;
use crate::crd::{
    Cleanup, FailoverRecord, FloatingElasticIP, FloatingElasticIPSpec, FloatingElasticIPStatus,
    HolderStatus, Pin,
};

/// Columns of `feip status`.
pub const STATUS_HEADERS: [&str; 8] = [
    "NAMESPACE",
    "NAME",
    "ADDRESS",
    "HOLDER",
    "STATUS",
    "FAILOVERS",
    "LAST-FAILOVER",
    "BANS",
];

/// The widest a table cell is printed, in characters: a longer cell is cut and ends in `…`.
/// Padding is written by hand, so no width can reach the formatter's limit (`u16::MAX`, a
/// panic), whatever a status holds: the controller bounds what it writes, but anyone with
/// access to the status subresource can write anything.
pub const MAX_CELL_CHARS: usize = 256;

/// The widest a `describe` field value is printed, in characters (cut like a cell).
pub const MAX_FIELD_CHARS: usize = 1024;

/// `text` on one line (control characters, newlines included, as spaces), cut to at most
/// `max` characters, the last being `…` when it was cut.
fn cut(text: &str, max: usize) -> String {
    let one_line = |c: char| if c.is_control() { ' ' } else { c };
    if text.chars().nth(max).is_none() {
        return text.chars().map(one_line).collect();
    }
    let mut s: String = text
        .chars()
        .take(max.saturating_sub(1))
        .map(one_line)
        .collect();
    s.push('…');
    s
}

/// A kubectl-style table: columns padded to their widest cell, three spaces apart; cells
/// cut to [`MAX_CELL_CHARS`].
pub fn render_table<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    let cut_line = |line: &mut dyn Iterator<Item = &str>| -> Vec<(String, usize)> {
        line.map(|c| cut(c, MAX_CELL_CHARS))
            .map(|c| {
                let n = c.chars().count();
                (c, n)
            })
            .collect()
    };
    let mut lines = vec![cut_line(&mut headers.iter().copied())];
    lines.extend(
        rows.iter()
            .map(|r| cut_line(&mut r.iter().map(AsRef::as_ref))),
    );
    let mut widths: Vec<usize> = lines[0].iter().map(|(_, n)| *n).collect();
    for line in &lines[1..] {
        for (i, (_, n)) in line.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(*n);
            }
        }
    }
    let mut out = String::new();
    for line in lines {
        let mut l = String::new();
        for (i, (cell, n)) in line.iter().enumerate() {
            l.push_str(cell);
            let pad = widths.get(i).map_or(0, |w| w.saturating_sub(*n)) + 3;
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    }
    out
}

/// One `feip status` row.
pub fn status_row(f: &FloatingElasticIP, now: Timestamp) -> Vec<String> {
    let st = f.status.clone().unwrap_or_default();
    let address = st
        .address
        .as_ref()
        .and_then(|a| a.public_ip.clone())
        .or_else(|| f.spec.public_ip.clone())
        .or_else(|| f.spec.allocation_id.clone())
        .unwrap_or_else(|| NONE.into());
    vec![
        f.namespace().unwrap_or_default(),
        f.name_any(),
        address,
        st.holder
            .as_ref()
            .map_or_else(|| NONE.into(), |h| h.node.clone()),
        st.phase.map_or_else(|| NONE.into(), |p| p.as_str().into()),
        st.failover_count.to_string(),
        st.last_failover
            .as_ref()
            .map_or_else(|| NONE.into(), format_last_failover),
        format_bans(&f.spec, &st, now),
    ]
}

/// `from->to (reason, 1.234s)`.
pub fn format_last_failover(r: &FailoverRecord) -> String {
    let from = r.from.as_deref().unwrap_or("?");
    match &r.duration_seconds {
        Some(d) => format!("{from}->{} ({}, {d}s)", r.to, r.reason),
        None => format!("{from}->{} ({})", r.to, r.reason),
    }
}

/// Active bans: operator bans (`node` or `node (1h)` with the time left) and failure bans
/// (`node (failed)`), or `<none>`.
pub fn format_bans(
    spec: &FloatingElasticIPSpec,
    status: &FloatingElasticIPStatus,
    now: Timestamp,
) -> String {
    let mut out: Vec<String> = Vec::new();
    for b in spec.bans.iter().flatten() {
        match &b.expires_at {
            None => out.push(b.node.clone()),
            Some(t) if t.0 > now => {
                out.push(format!(
                    "{} ({})",
                    b.node,
                    human_duration(t.0.duration_since(now))
                ));
            }
            Some(_) => {} // expired
        }
    }
    for r in status.nodes.iter().filter(|r| r.banned) {
        if !out
            .iter()
            .any(|o| o.split(' ').next() == Some(r.node.as_str()))
        {
            out.push(format!("{} (failed)", r.node));
        }
    }
    if out.is_empty() {
        NONE.into()
    } else {
        out.join(", ")
    }
}

/// kubectl-like short durations: `45s`, `3m20s`, `42m`, `5h7m`, `20h`, `3d`.
pub fn human_duration(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    let (m, h, days) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        format!("{m}m{}s", s % 60)
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        format!("{h}h{}m", m % 60)
    } else if h < 48 {
        format!("{h}h")
    } else {
        format!("{days}d")
    }
}

pub(super) fn fmt_ts(t: Timestamp) -> String {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t).unwrap_or_else(|_| t.to_string())
}

fn fmt_time(t: &Option<Time>) -> String {
    t.as_ref().map_or_else(|| NONE.into(), |t| fmt_ts(t.0))
}

/// The details of `feip status NAME` below its table row: settings, holder, last failover,
/// conditions and per-node failure counts.
pub fn describe(f: &FloatingElasticIP, now: Timestamp) -> String {
    let st = f.status.clone().unwrap_or_default();
    let spec = &f.spec;
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{:<16}{}", format!("{k}:"), cut(&v, MAX_FIELD_CHARS));
    };
    field("Elastic IP", elastic_ip_text(spec, &st));
    field("Candidates", candidates_text(spec));
    field(
        "Target state",
        format!("{:?}", spec.target_state.unwrap_or_default()),
    );
    field(
        "Management",
        format!("{:?}", spec.management.unwrap_or_default()),
    );
    field(
        "Pin",
        spec.pin.as_ref().map_or_else(|| NONE.into(), pin_text),
    );
    field("Bans", bans_text(spec, now));
    field(
        "Holder",
        st.holder.as_ref().map_or_else(|| NONE.into(), holder_text),
    );
    if let Some(l) = &st.lease {
        field(
            "Lease",
            format!("{} (transitions {})", l.name, l.transitions),
        );
    }
    field(
        "Last failover",
        st.last_failover
            .as_ref()
            .map_or_else(|| NONE.into(), last_failover_text),
    );
    field("Planned moves", planned_moves_text(&st));
    if let Some(c) = &spec.cleanup {
        field("Cleanup", cleanup_text(c, &st));
    }
    let generation = f.metadata.generation.unwrap_or(0);
    field(
        "Generation",
        match st.observed_generation {
            Some(o) => format!("{generation} (observed {o})"),
            None => format!("{generation} (not yet observed)"),
        },
    );
    section(
        &mut out,
        "Conditions",
        &["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
        &condition_rows(&st, now),
    );
    section(
        &mut out,
        "Node failures",
        &["NODE", "FAILURES", "LAST-FAILURE", "REASON", "BANNED"],
        &node_failure_rows(&st),
    );
    out
}

/// `eipalloc-… (association eipassoc-…)` or `(not associated)`.
fn elastic_ip_text(spec: &FloatingElasticIPSpec, st: &FloatingElasticIPStatus) -> String {
    let eip = spec
        .allocation_id
        .clone()
        .or_else(|| spec.public_ip.clone())
        .unwrap_or_default();
    let assoc = st
        .address
        .as_ref()
        .and_then(|a| a.association_id.clone())
        .map_or_else(
            || "not associated".to_string(),
            |a| format!("association {a}"),
        );
    format!("{eip} ({assoc})")
}

/// The candidate list with priorities, or the node selector.
fn candidates_text(spec: &FloatingElasticIPSpec) -> String {
    match (&spec.candidates, &spec.node_selector) {
        (Some(c), _) => c
            .iter()
            .map(|c| match c.priority {
                Some(p) => format!("{} (priority {p})", c.node),
                None => c.node.clone(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        (None, Some(sel)) => format!("nodeSelector {}", selector_text(sel)),
        (None, None) => NONE.into(),
    }
}

fn pin_text(p: &Pin) -> String {
    let mut s = p.node.clone();
    if p.clear_when_done == Some(true) {
        s.push_str(" (move in progress; cleared when done)");
    }
    if let Some(t) = &p.expires_at {
        let _ = write!(s, " until {}", fmt_ts(t.0));
    }
    s
}

/// Every operator ban, expired ones included (unlike the status table).
fn bans_text(spec: &FloatingElasticIPSpec, now: Timestamp) -> String {
    let bans = spec
        .bans
        .iter()
        .flatten()
        .map(|b| match &b.expires_at {
            Some(t) if t.0 <= now => format!("{} (expired {})", b.node, fmt_ts(t.0)),
            Some(t) => format!("{} (until {})", b.node, fmt_ts(t.0)),
            None => b.node.clone(),
        })
        .collect::<Vec<_>>();
    if bans.is_empty() {
        NONE.into()
    } else {
        bans.join(", ")
    }
}

/// `node (instance, interface, private IP) since …`.
fn holder_text(h: &HolderStatus) -> String {
    let parts: Vec<&str> = [
        h.instance_id.as_deref(),
        h.network_interface_id.as_deref(),
        h.private_ip_address.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut s = h.node.clone();
    if !parts.is_empty() {
        let _ = write!(s, " ({})", parts.join(", "));
    }
    if let Some(since) = &h.since {
        let _ = write!(s, " since {}", fmt_ts(since.0));
    }
    s
}

/// Operator moves (`feip move`), counted apart from the failovers: `0`, or the count and the
/// last one.
fn planned_moves_text(st: &FloatingElasticIPStatus) -> String {
    match &st.last_planned_move {
        Some(r) => format!("{}, last {}", st.planned_move_count, last_failover_text(r)),
        None => st.planned_move_count.to_string(),
    }
}

fn last_failover_text(r: &FailoverRecord) -> String {
    let mut s = format!(
        "{} -> {}, reason {}",
        r.from.as_deref().unwrap_or("?"),
        r.to,
        r.reason
    );
    if let Some(d) = &r.duration_seconds {
        let _ = write!(s, ", took {d}s");
    }
    let _ = write!(
        s,
        " (detected {}, completed {})",
        fmt_time(&r.detected_at),
        fmt_time(&r.completed_at)
    );
    s
}

/// The cleanup request and whether the controller has handled it.
fn cleanup_text(c: &Cleanup, st: &FloatingElasticIPStatus) -> String {
    let state = if st.last_cleanup_request_id.as_deref() == Some(c.request_id.as_str()) {
        "handled"
    } else {
        "pending"
    };
    let scope = c.node.as_deref().unwrap_or("all nodes");
    format!("request {} for {scope}: {state}", c.request_id)
}

fn condition_rows(st: &FloatingElasticIPStatus, now: Timestamp) -> Vec<Vec<String>> {
    st.conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                human_duration(now.duration_since(c.last_transition_time.0)),
                c.message.clone(),
            ]
        })
        .collect()
}

fn node_failure_rows(st: &FloatingElasticIPStatus) -> Vec<Vec<String>> {
    st.nodes
        .iter()
        .map(|r| {
            let banned = match (&r.banned, &r.banned_until) {
                (false, _) => "no".to_string(),
                (true, Some(t)) => format!("until {}", fmt_ts(t.0)),
                (true, None) => "yes".to_string(),
            };
            vec![
                r.node.clone(),
                r.failure_count.to_string(),
                fmt_time(&r.last_failure),
                r.last_failure_reason.clone().unwrap_or_else(|| NONE.into()),
                banned,
            ]
        })
        .collect()
}

/// A titled block of `describe`: an indented table, or `<none>`.
fn section(out: &mut String, title: &str, headers: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "\n{title}:");
    if rows.is_empty() {
        out.push_str("  <none>\n");
    } else {
        indent(out, &render_table(headers, rows));
    }
}

fn indent(out: &mut String, text: &str) {
    for l in text.lines() {
        let _ = writeln!(out, "  {l}");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cli::fixtures::{feip, ts};

    #[test]
    fn cli_table_is_aligned() {
        let t = render_table(&["A", "LONGER"], &[vec!["xxxx", "1"], vec!["y", "22"]]);
        assert_eq!(t, "A      LONGER\nxxxx   1\ny      22\n");
    }

    #[test]
    fn cli_table_cuts_long_cells_and_flattens_control_characters() {
        // 300 two-byte characters: the cut lands between characters, never inside one.
        let long = "é".repeat(300);
        let t = render_table(
            &["A", "B"],
            &[vec![long.as_str(), "y"], vec!["a\nb\tc", "z"]],
        );
        let cut = format!("{}…", "é".repeat(255));
        assert_eq!(
            t,
            format!(
                "A{}   B\n{cut}   y\na b c{}   z\n",
                " ".repeat(255),
                " ".repeat(251)
            )
        );
        // A cell of exactly the maximum is kept whole.
        let full = "x".repeat(256);
        let t = render_table(&["A"], &[vec![full.as_str()]]);
        assert_eq!(t, format!("A\n{full}\n"));
    }

    #[test]
    fn cli_renders_huge_status_fields_cut_and_without_panicking() {
        // lastFailureReason once reached 66,685 characters; a width above u16::MAX made
        // `render_table` panic ("Formatting argument out of range").
        let now = ts("2030-01-01T00:10:00Z");
        let node = "n".repeat(70_000);
        let reason = "é".repeat(70_000);
        let message = "m".repeat(70_000);
        let f = feip(
            json!({
                "allocationId": "eipalloc-0123456789abcdef0",
                "candidates": [{"node": node}],
                "bans": [{"node": node}],
                "pin": {"node": node},
            }),
            Some(json!({
                "phase": "Failing",
                "holder": {"node": node, "instanceId": message},
                "address": {"publicIp": message},
                "lastFailover": {"from": node, "to": node, "reason": reason},
                "plannedMoveCount": 3,
                "lastPlannedMove": {"from": node, "to": node, "reason": reason},
                "conditions": [{"type": "Ready", "status": "False", "reason": message, "message": message, "lastTransitionTime": "2030-01-01T00:00:00Z"}],
                "nodes": [{"node": node, "failureCount": 3, "lastFailureReason": reason, "banned": true}],
            })),
        );
        let table = render_table(&STATUS_HEADERS, &[status_row(&f, now)]);
        let details = describe(&f, now);
        for text in [&table, &details] {
            for line in text.lines() {
                let n = line.chars().count();
                assert!(n <= 2_000, "a line of {n} characters");
            }
        }
        assert!(table.contains(&format!("{}…", "n".repeat(255))), "{table}");
        assert!(
            details.contains(&format!("{}…", "é".repeat(255))),
            "{details}"
        );
        assert!(
            details.contains(&format!("{}…", "m".repeat(255))),
            "{details}"
        );
        assert!(details.contains("Holder:         nnnn"), "{details}");
    }

    #[test]
    fn cli_status_row_and_bans() {
        let now = ts("2030-01-01T00:00:00Z");
        let f = feip(
            json!({
                "allocationId": "eipalloc-0123456789abcdef0",
                "candidates": [{"node": "a"}, {"node": "b"}, {"node": "c"}],
                "bans": [{"node": "c", "expiresAt": "2030-01-01T01:00:00Z"}, {"node": "d", "expiresAt": "2029-01-01T00:00:00Z"}, {"node": "e"}],
            }),
            Some(json!({
                "phase": "Active",
                "holder": {"node": "b"},
                "address": {"publicIp": "203.0.113.10"},
                "failoverCount": 2,
                "lastFailover": {"from": "a", "to": "b", "reason": "HolderDead", "durationSeconds": "1.234"},
                "nodes": [{"node": "a", "failureCount": 1, "banned": true}, {"node": "c", "failureCount": 1, "banned": true}],
            })),
        );
        assert_eq!(
            status_row(&f, now),
            [
                "prod",
                "web",
                "203.0.113.10",
                "b",
                "Active",
                "2",
                "a->b (HolderDead, 1.234s)",
                "c (60m), e, a (failed)"
            ]
        );
        let bare = feip(
            json!({"allocationId": "eipalloc-0123456789abcdef0", "candidates": [{"node": "a"}]}),
            None,
        );
        assert_eq!(
            status_row(&bare, now),
            [
                "prod",
                "web",
                "eipalloc-0123456789abcdef0",
                "<none>",
                "<none>",
                "0",
                "<none>",
                "<none>"
            ]
        );
    }

    #[test]
    fn cli_describe_shows_conditions_and_failure_counts() {
        let now = ts("2030-01-01T00:10:00Z");
        let f = feip(
            json!({
                "allocationId": "eipalloc-0123456789abcdef0",
                "candidates": [{"node": "a", "priority": 10}, {"node": "b"}],
                "pin": {"node": "b", "clearWhenDone": true},
                "cleanup": {"requestId": "r1"},
            }),
            Some(json!({
                "phase": "Active",
                "holder": {"node": "a", "instanceId": "i-1", "networkInterfaceId": "eni-1"},
                "lastCleanupRequestId": "r1",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Active", "message": "on a", "lastTransitionTime": "2030-01-01T00:00:00Z"}],
                "nodes": [{"node": "b", "failureCount": 3, "lastFailure": "2030-01-01T00:05:00Z", "lastFailureReason": "AssociateFailed", "banned": true}],
            })),
        );
        let d = describe(&f, now);
        assert!(d.contains("Candidates:     a (priority 10), b"), "{d}");
        assert!(d.contains("Pin:            b (move in progress"), "{d}");
        assert!(d.contains("Holder:         a (i-1, eni-1)"), "{d}");
        assert!(d.contains("request r1 for all nodes: handled"), "{d}");
        assert!(d.contains("TYPE    STATUS   REASON   AGE   MESSAGE"), "{d}");
        assert!(d.contains("Ready   True     Active   10m   on a"), "{d}");
        assert!(
            d.contains("b      3          2030-01-01T00:05:00Z   AssociateFailed   yes"),
            "{d}"
        );
    }

    #[test]
    fn cli_human_durations() {
        let h = |s: i64| human_duration(SignedDuration::from_secs(s));
        assert_eq!(h(-3), "0s");
        assert_eq!(h(45), "45s");
        assert_eq!(h(200), "3m20s");
        assert_eq!(h(3600), "60m");
        assert_eq!(h(5 * 3600 + 7 * 60), "5h7m");
        assert_eq!(h(20 * 3600), "20h");
        assert_eq!(h(3 * 86400), "3d");
    }

    #[test]
    fn planned_moves_are_shown_apart_from_failovers() {
        let now = ts("2030-01-01T00:10:00Z");
        let f = feip(
            json!({"allocationId": "eipalloc-0123456789abcdef0", "candidates": [{"node": "a"}, {"node": "b"}]}),
            Some(json!({
                "failoverCount": 1,
                "lastFailover": {"from": "a", "to": "b", "reason": "HolderDead"},
                "plannedMoveCount": 4,
                "lastPlannedMove": {"from": "b", "to": "a", "reason": "Pinned", "durationSeconds": "0.512"},
            })),
        );
        assert_eq!(status_row(&f, now)[5], "1");
        let details = describe(&f, now);
        assert!(
            details.contains("Planned moves:  4, last b -> a, reason Pinned, took 0.512s"),
            "{details}"
        );
        let none = feip(json!({"allocationId": "eipalloc-0123456789abcdef0"}), None);
        assert!(describe(&none, now).contains("Planned moves:  0\n"));
    }
}
