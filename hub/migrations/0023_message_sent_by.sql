-- Which user sent an outbound message from the console (an agent's reply above all), so a
-- thread shows who answered. Null for API keys, campaigns, automatic replies and inbound
-- messages. No foreign key: the record of who sent a message outlives the user's account.
ALTER TABLE messages ADD COLUMN sent_by uuid;
