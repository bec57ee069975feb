-- What widens a caller's view beyond its own records: sharing agreements between states
-- (kind 'agreement', grantee a state code) and break-the-glass grants (kind 'break_glass',
-- grantee an agency id). Rows are never deleted; revoked ones keep their revoke_time.
CREATE TABLE access_grants (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    grantor_state TEXT NOT NULL,
    grantee TEXT NOT NULL,
    persons TEXT NOT NULL,
    categories TEXT NOT NULL,
    purpose TEXT NOT NULL,
    expire_time BIGINT NOT NULL,
    revoke_time BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX access_grants_grantee ON access_grants (grantee, kind, expire_time);
CREATE INDEX access_grants_grantor ON access_grants (grantor_state, create_time);
