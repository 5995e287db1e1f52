"""Defence in depth: the database itself refuses changes to routes of an activated version."""

from django.db import migrations

SQL = """
CREATE OR REPLACE FUNCTION controlplane_route_guard() RETURNS trigger AS $$
DECLARE
    version_status text;
BEGIN
    SELECT status INTO version_status FROM controlplane_routingtableversion
    WHERE id = COALESCE(NEW.version_id, OLD.version_id);
    IF version_status IS NOT NULL AND version_status <> 'draft' THEN
        RAISE EXCEPTION 'routing table version % is %; its routes are immutable',
            COALESCE(NEW.version_id, OLD.version_id), version_status
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN COALESCE(NEW, OLD);
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER controlplane_route_immutable
BEFORE INSERT OR UPDATE OR DELETE ON controlplane_route
FOR EACH ROW EXECUTE FUNCTION controlplane_route_guard();
"""

REVERSE = """
DROP TRIGGER IF EXISTS controlplane_route_immutable ON controlplane_route;
DROP FUNCTION IF EXISTS controlplane_route_guard();
"""


class Migration(migrations.Migration):
    dependencies = [("controlplane", "0003_registry_generation")]
    operations = [migrations.RunSQL(SQL, REVERSE)]
