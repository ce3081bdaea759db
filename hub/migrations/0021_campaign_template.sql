-- A campaign remembers the saved template it was made from (or last refreshed from by a
-- draft's PATCH). It keeps its own copy of the text: editing the template changes no
-- campaign, and deleting it only forgets the link. Templates gain an email's HTML part, so a
-- template fills every part of an email campaign.
ALTER TABLE campaigns
    ADD COLUMN template_id uuid REFERENCES templates(id) ON DELETE SET NULL;
CREATE INDEX campaigns_template ON campaigns (template_id) WHERE template_id IS NOT NULL;
ALTER TABLE templates ADD COLUMN html text;
