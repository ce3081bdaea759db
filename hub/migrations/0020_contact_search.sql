-- Contact search ignores accents and case: "jose" finds "José", "muller" "Müller",
-- "strasse" "Straße". The embedded PostgreSQL has no `unaccent` (nor `pg_trgm`) extension,
-- so `search_fold` does it with what every PostgreSQL 13+ has: NFKD (which splits "é" into
-- "e" and a combining accent, and "ﬁ" or "Ｆ" into plain letters), the combining marks
-- removed, lower case, and the few Latin letters NFKD leaves whole spelt out.
--
-- One SQL function folds both sides, the stored names and the search, so they cannot
-- disagree. The folded name is a generated column: PostgreSQL keeps it on every write
-- path (the API, the import's set-based merge, bulk COPY), and adding it fills it for the
-- contacts already stored.
CREATE FUNCTION search_fold(value text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN replace(replace(replace(translate(
        lower(regexp_replace(normalize(value, NFKD),
                             '[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]',
                             '', 'g')),
        'øłđħı', 'oldhi'), 'ß', 'ss'), 'æ', 'ae'), 'œ', 'oe');

ALTER TABLE contacts ADD COLUMN search_name text
    GENERATED ALWAYS AS (search_fold(first_name || ' ' || last_name)) STORED;
