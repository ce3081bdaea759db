-- Conversations list by latest activity, newest first (the API's pages and the inbox), as
-- every inbox does; threads without a message yet come last. The order of
-- hub/pagination.py BY_ACTIVITY. last_message_at changes with every message, so those
-- updates of a conversation are no longer HOT.
CREATE INDEX conversations_by_activity ON conversations (
    sub_account_id, coalesce(last_message_at, '-infinity'::timestamptz) DESC,
    created_at DESC, id DESC);
-- Nothing reads conversations by creation any more.
DROP INDEX conversations_page;
