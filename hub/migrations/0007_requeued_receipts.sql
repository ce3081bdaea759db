-- A message that Twilio failed for throttling after accepting it is queued again and its SID
-- retired (hub/requeue.py), recorded in its history as '<SID>:requeued'. Late callbacks of
-- that attempt are found through this small partial index.
CREATE INDEX message_events_requeued ON message_events (event_key)
    WHERE provider_status = 'requeued';
