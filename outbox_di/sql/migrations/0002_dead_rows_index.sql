-- Version 2: dead rows get a partial index of their own, in the order `dead list` shows them.
-- Without it, `outbox-di status`, `dead list`, `dead retry` and `dead discard` read the whole
-- table, published rows included (about 100 ms per call on 1M published rows); with it, the
-- operator views read the pending and dead rows only (under 1 ms on the same table). Dead rows
-- are kept until an operator acts, so the index stays as small as the dead letter queue.
-- Building it reads the table once and holds back writes meanwhile (0.1-0.2 s on 1M rows).

CREATE INDEX IF NOT EXISTS outbox_events_dead_idx
    ON {{schema}}.outbox_events (seq)
    WHERE status = 'dead';

CREATE INDEX IF NOT EXISTS inbox_events_dead_idx
    ON {{schema}}.inbox_events (seq)
    WHERE status = 'dead';
