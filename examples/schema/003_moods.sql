-- v3: how each greeting felt.
CREATE TABLE moods (greeting_id INTEGER NOT NULL REFERENCES greetings (id), mood TEXT NOT NULL);
