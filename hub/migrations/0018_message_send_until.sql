-- A campaign message may leave only inside its contact's sending window: the instant that
-- window closes, written by the scheduler when it creates the message, is the Sender shard's
-- last chance to send it. Past it the shard gives the recipient back to the campaign, which
-- sends it when the window opens again. NULL: no window (email, single sends, older rows).
ALTER TABLE messages ADD COLUMN send_until timestamptz;
