//! The engine conformance suite (`tests/conformance/`) run against the embedded engine: a
//! fresh data directory per case, the real file system, and a manual clock.

mod conformance;

use std::sync::Arc;

use wharf_broker::{EmbeddedConfig, EmbeddedEngine};
use wharf_log::ManualClock;
use wharf_log::vfs::StdFs;

use conformance::Harness;

/// The clock's start: a realistic time (2023-11-14), far from zero and from overflow.
const EPOCH_MS: i64 = 1_700_000_000_000;

/// The embedded engine on a temporary directory, with a manual clock.
struct EmbeddedHarness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    engine: Option<Arc<EmbeddedEngine>>,
}

fn harness() -> EmbeddedHarness {
    EmbeddedHarness {
        dir: tempfile::tempdir().expect("a temporary directory"),
        clock: ManualClock::new(EPOCH_MS),
        engine: None,
    }
}

impl EmbeddedHarness {
    fn open(&mut self) -> Arc<EmbeddedEngine> {
        let engine = EmbeddedEngine::open(EmbeddedConfig {
            data_dir: self.dir.path().join("data"),
            vfs: StdFs::shared(),
            clock: Arc::new(self.clock.clone()),
        })
        .expect("the embedded engine opens");
        let engine = Arc::new(engine);
        self.engine = Some(engine.clone());
        engine
    }

    fn engine(&self) -> &EmbeddedEngine {
        self.engine.as_deref().expect("the engine was started")
    }
}

impl Harness for EmbeddedHarness {
    type E = EmbeddedEngine;

    async fn start(&mut self) -> Arc<EmbeddedEngine> {
        assert!(self.engine.is_none(), "started twice");
        self.open()
    }

    async fn restart(&mut self) -> Arc<EmbeddedEngine> {
        self.engine().close().expect("a clean close");
        self.engine = None;
        self.open()
    }

    fn advance_clock(&self, ms: i64) {
        self.clock.advance(ms);
    }

    fn now_ms(&self) -> i64 {
        wharf_log::Clock::now_ms(&self.clock)
    }

    async fn enforce_retention(&self) {
        self.engine()
            .enforce_retention()
            .expect("retention applies");
    }
}

impl Drop for EmbeddedHarness {
    fn drop(&mut self) {
        // Stop the logs' threads before the directory goes away.
        if let Some(engine) = self.engine.take() {
            let _ = engine.close();
        }
    }
}

conformance::conformance_tests! { crate::harness;
    topics {
        create_defaults,
        settings_round_trip,
        idempotent_create,
        conflicting_create,
        bad_names,
        bad_settings,
        describe_list_delete,
        survives_restart,
    }
    publish {
        key_routing,
        round_robin,
        explicit_partition,
        bad_partition,
        oversize,
        empty_batch,
        results_in_input_order,
        headers_and_binary_round_trip,
        shared_headers,
        timestamps_non_decreasing,
    }
    dedup {
        duplicate_returns_original,
        duplicate_within_batch,
        duplicate_after_restart,
        window_expiry,
        window_zero_disables,
        concurrent_same_id,
    }
    read {
        positions_earliest_latest_offset_timestamp,
        out_of_range,
        max_messages,
        max_bytes,
        long_poll_woken_by_publish,
        short_wait_returns_empty,
        retention_skips_to_start,
        age_retention,
    }
    stream {
        create_describe_list_delete,
        idempotent_and_conflicting_create,
        unknown_subscription,
        one_member_gets_all,
        members_split_partitions,
        leave_rebalances,
        session_timeout,
        fetch_owned_partitions_and_continue,
        fetch_limits,
        commit_durable_across_restart,
        commit_not_owned,
        commit_below_current,
        reset_positions,
        start_positions,
        lag,
        long_poll_fetch,
        subscriptions_are_independent,
    }
    shared {
        create_describe_list_delete,
        idempotent_and_conflicting_create,
        bad_settings,
        bad_requests,
        wrong_kind,
        receive_leases_to_one_member,
        ack_is_final,
        nack_delay_and_backoff,
        extend_lease,
        lease_expiry_redelivers,
        lease_expiry_backoff_counts_from_deadline,
        expired_lease_accounted_without_receive,
        dead_letter_topic_refuses_publish,
        max_deliveries_dead_letters,
        terminate_dead_letters,
        redrive,
        deliver_at_delays,
        ordered_by_key,
        max_in_flight_per_member,
        restart_keeps_acks_counts_and_delays,
        restart_keeps_dead_letters_and_redrive,
        long_poll_woken_by_publish,
        long_poll_woken_by_nack,
        stream_and_shared_on_one_topic_are_independent,
        multiple_partitions,
    }
}
