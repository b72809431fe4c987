-- One database and one login per service (docs/CONVENTIONS.md): a service never reads another
-- service's data, and here it cannot either. Run once by the postgres image, on an empty data volume.
-- The passwords are for the compose lab only; docker-compose.yml repeats them in the database URLs.
-- Owning its database lets a service create its tables (PostgreSQL 15 no longer lets every role
-- create in the public schema; the database owner still can).

CREATE ROLE auth LOGIN PASSWORD 'auth-lab-password';
CREATE DATABASE auth OWNER auth;

CREATE ROLE intake LOGIN PASSWORD 'intake-lab-password';
CREATE DATABASE intake OWNER intake;

CREATE ROLE eligibility LOGIN PASSWORD 'eligibility-lab-password';
CREATE DATABASE eligibility OWNER eligibility;

CREATE ROLE site_router LOGIN PASSWORD 'site_router-lab-password';
CREATE DATABASE site_router OWNER site_router;

CREATE ROLE notifier LOGIN PASSWORD 'notifier-lab-password';
CREATE DATABASE notifier OWNER notifier;

CREATE ROLE insights LOGIN PASSWORD 'insights-lab-password';
CREATE DATABASE insights OWNER insights;

-- Other roles may not connect to these databases (PUBLIC has CONNECT by default).
REVOKE CONNECT ON DATABASE auth, intake, eligibility, site_router, notifier, insights FROM PUBLIC;
GRANT CONNECT ON DATABASE auth TO auth;
GRANT CONNECT ON DATABASE intake TO intake;
GRANT CONNECT ON DATABASE eligibility TO eligibility;
GRANT CONNECT ON DATABASE site_router TO site_router;
GRANT CONNECT ON DATABASE notifier TO notifier;
GRANT CONNECT ON DATABASE insights TO insights;
