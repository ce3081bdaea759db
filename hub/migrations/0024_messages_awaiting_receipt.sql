-- Texts accepted and still waiting for their final receipt, oldest first: the reconciler
-- asks Twilio about those past `receipt_grace_s` every 30 s (store.unconfirmed_sent).
-- Without it that query scanned every message (200-470 ms at 1M rows); with it 7-14 ms.
CREATE INDEX messages_awaiting_receipt ON messages (updated_at)
    WHERE status = 'sent' AND channel IN ('sms', 'mms') AND provider_message_id IS NOT NULL;
