-- Every sub-account has quiet hours: ones that start where they end read as "never" as much
-- as "always", and the API has refused them (422 empty_quiet_hours) since they made every
-- campaign created without its own window fail. Rows stored before keep none of that
-- doubt: they take the default, 21:00-08:00, the hours a sub-account created without any
-- gets. A campaign already launched keeps the window stored on it; a draft reaching outside
-- the new hours is refused at launch until edited, as after any change of quiet hours.
UPDATE sub_accounts SET quiet_start = '21:00', quiet_end = '08:00', updated_at = now()
WHERE quiet_start = quiet_end;

ALTER TABLE sub_accounts
    ADD CONSTRAINT sub_accounts_quiet_hours_differ CHECK (quiet_start <> quiet_end);
