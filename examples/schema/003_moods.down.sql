-- back to v2: no moods.
DROP TABLE moods;
