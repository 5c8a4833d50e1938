-- Runs once when the docker-compose server is first initialised.
CREATE EXTENSION IF NOT EXISTS q3c;
