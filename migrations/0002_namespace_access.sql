-- clusterscope history, version 2: give a team read access to only the rows delivered to
-- their namespaces (row-level security). A role sees a row when one of the row's
-- `namespaces` is granted to it (or to a role it is a member of) in namespace_access:
--
--   CREATE ROLE team_a LOGIN PASSWORD '...';
--   GRANT USAGE ON SCHEMA clusterscope TO team_a;
--   GRANT SELECT ON clusterscope.events TO team_a;
--   INSERT INTO clusterscope.namespace_access (role, namespace) VALUES ('team_a', 'team-a');
--
-- The table's owner (the role clusterscope connects as) is not restricted.
CREATE TABLE clusterscope.namespace_access (
    role      name NOT NULL,
    namespace text NOT NULL,
    PRIMARY KEY (role, namespace)
);

-- The namespaces role `who` may read; runs as its owner, so that a team's role needs no
-- access to the grants table itself (and so it is given the caller: inside, current_user is
-- the owner).
CREATE FUNCTION clusterscope.readable_namespaces(who name) RETURNS text[]
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, clusterscope
AS $$
    SELECT coalesce(array_agg(DISTINCT a.namespace), '{}')
    FROM clusterscope.namespace_access a
    JOIN pg_catalog.pg_roles r ON r.rolname = a.role
    WHERE pg_catalog.pg_has_role(who, r.oid, 'USAGE')
$$;

ALTER TABLE clusterscope.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY events_by_namespace ON clusterscope.events
    FOR SELECT
    USING (namespaces && (SELECT clusterscope.readable_namespaces(current_user)));
