//! `apply::backoff` bounds. (The change reason of a pending failover is a `ChangeReason`,
//! parsed back from its name: see the decide tests.)

use std::time::Duration;

use super::super::apply::backoff;

#[test]
fn backoff_stays_within_jittered_bounds() {
    let ms = Duration::from_millis;
    // attempt -> unjittered base: 500 ms * 2^(attempt-1), at most 30 s (attempt 0 as 1).
    let rows = [
        (0, ms(500)),
        (1, ms(500)),
        (2, ms(1000)),
        (3, ms(2000)),
        (4, ms(4000)),
        (6, ms(16_000)),
        (7, ms(30_000)),
        (8, ms(30_000)),
        (40, ms(30_000)),
        (u32::MAX, ms(30_000)),
    ];
    for (attempt, base) in rows {
        let (lo, hi) = (base.mul_f64(0.8), base.mul_f64(1.2));
        for _ in 0..200 {
            let b = backoff(attempt);
            assert!(
                lo <= b && b < hi,
                "attempt {attempt}: {b:?} outside [{lo:?}, {hi:?})"
            );
        }
    }
    assert!(
        backoff(100) < Duration::from_secs(36),
        "never above 30 s + 20 %"
    );
}
