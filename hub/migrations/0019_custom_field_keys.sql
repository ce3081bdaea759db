-- Custom fields are now stored under hub.contacts.custom_key of their name:
-- the name's letters and digits in lower case, joined by "_" ("Favourite Colour" ->
-- "favourite_colour"), which is what templates and audience filters name. Rewrite the keys
-- stored before, so filters and the blank-field count find them too. Only ASCII keys are
-- rewritten (SQL's character classes depend on the server's locale, Python's do not); a
-- key of other letters stays as stored, and templates still read it by its custom_key. A
-- key with no letter or digit is kept. Two keys that become one keep one of their values.
UPDATE contacts c SET custom_fields = (
    SELECT jsonb_object_agg(CASE WHEN n.norm = '' THEN e.key ELSE n.norm END, e.value)
    FROM jsonb_each(c.custom_fields) e,
         LATERAL (SELECT CASE WHEN e.key ~ '^[ -~]*$'
                              THEN btrim(regexp_replace(lower(e.key), '[^a-z0-9]+', '_', 'g'),
                                         '_')
                              ELSE e.key END AS norm) n)
WHERE EXISTS (
    SELECT 1 FROM jsonb_each(c.custom_fields) e
    WHERE e.key ~ '^[ -~]*$'
      AND btrim(regexp_replace(lower(e.key), '[^a-z0-9]+', '_', 'g'), '_') NOT IN ('', e.key));
