-- v2: greetings get a language; lookups by name get an index.
ALTER TABLE greetings ADD COLUMN lang TEXT NOT NULL DEFAULT 'en';
CREATE INDEX greetings_by_name ON greetings (name);
