-- `monitor outbox retry` puts failed deliveries back: their give-up clock restarts then
ALTER TABLE deliveries ADD COLUMN requeued TEXT;
