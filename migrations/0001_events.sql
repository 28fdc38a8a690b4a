-- clusterscope history, version 1: one row per stored event about a cluster-scoped object,
-- keyed by the event's uid and updated as its count and last time grow.
CREATE SCHEMA IF NOT EXISTS clusterscope;

CREATE TABLE clusterscope.events (
    uid                 text        PRIMARY KEY,
    -- Where the source event is stored (default or kube-system) and its name there.
    namespace           text        NOT NULL,
    name                text        NOT NULL,
    -- The channel its route chose.
    channel             text        NOT NULL,
    -- What it is about: API group ('' for the core group), kind and name.
    involved_group      text        NOT NULL,
    involved_kind       text        NOT NULL,
    involved_name       text        NOT NULL,
    reason              text        NOT NULL DEFAULT '',
    type                text        NOT NULL DEFAULT '',
    message             text        NOT NULL DEFAULT '',
    reporting_component text        NOT NULL DEFAULT '',
    reporting_instance  text        NOT NULL DEFAULT '',
    -- The namespaces the channel delivered it to (its own, owners', pods'...).
    namespaces          text[]      NOT NULL DEFAULT '{}',
    first_time          timestamptz NOT NULL,
    last_time           timestamptz NOT NULL,
    count               integer     NOT NULL DEFAULT 1,
    resource_version    text        NOT NULL DEFAULT '',
    -- The whole event as stored (without managedFields).
    event               jsonb       NOT NULL,
    stored_at           timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Retention deletes by last_time; dashboards filter on it.
CREATE INDEX events_last_time ON clusterscope.events (last_time);
-- "Events about this Node this week".
CREATE INDEX events_object ON clusterscope.events (involved_kind, involved_name, last_time DESC);
-- "Top reasons by kind", "warnings by reason".
CREATE INDEX events_kind_reason ON clusterscope.events (involved_kind, reason);
-- "Everything delivered to this namespace".
CREATE INDEX events_namespaces ON clusterscope.events USING gin (namespaces);
