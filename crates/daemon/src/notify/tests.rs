#![allow(clippy::unwrap_used)]

use super::*;

#[tokio::test(start_paused = true)]
async fn a_pinger_without_a_watchdog_is_never_due() {
    let p = Pinger::every(None);
    let due = tokio::time::timeout(Duration::from_secs(3600), p.due()).await;
    assert!(due.is_err(), "a pinger without a watchdog fired");
}

#[tokio::test(start_paused = true)]
async fn a_pinger_is_due_once_per_period_however_often_the_loop_turns() {
    let mut p = Pinger::every(Some(Duration::from_secs(5)));
    // Due at once: the first ping goes out on the loop's first turn.
    tokio::time::timeout(Duration::from_millis(1), p.due())
        .await
        .unwrap();
    p.ping();
    let start = Instant::now();
    // Turns of the loop in between do not move the next ping.
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(1)).await;
        p.ping();
    }
    p.due().await;
    assert_eq!(Instant::now() - start, Duration::from_secs(5));
}
