from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("controlplane", "0002_roles")]
    operations = [
        migrations.RunSQL(
            "CREATE SEQUENCE IF NOT EXISTS controlplane_registry_generation",
            "DROP SEQUENCE IF EXISTS controlplane_registry_generation",
        )
    ]
