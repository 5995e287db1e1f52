from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("telemetry", "0005_idempotency_body_hash"),
    ]

    operations = [
        # A column with a constant default: metadata only, also on the partitioned table.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name="decisionrecord",
                    name="budget_holds",
                    field=models.JSONField(default=list),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE telemetry_decision "
                    "ADD COLUMN budget_holds jsonb NOT NULL DEFAULT '[]'::jsonb",
                    "ALTER TABLE telemetry_decision DROP COLUMN budget_holds",
                ),
            ],
        ),
    ]
