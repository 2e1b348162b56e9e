-- back to v1: no language column, no index by name.
DROP INDEX greetings_by_name;
ALTER TABLE greetings DROP COLUMN lang;
