"""Create the four roles as Django groups, with admin permissions for Operators and Admins."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLES = ["Viewer", "Reviewer", "Operator", "Admin"]
OPERATOR_MODELS = [
    "modelendpoint", "modelprice", "taskclass", "routingtableversion", "route", "budget",
    "team", "application", "apikey",
]


def create_roles(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    groups = {name: Group.objects.get_or_create(name=name)[0] for name in ROLES}
    operator_perms = Permission.objects.filter(
        content_type__app_label="controlplane", content_type__model__in=OPERATOR_MODELS
    )
    audit_view = Permission.objects.filter(
        content_type__app_label="controlplane", codename="view_auditlog"
    )
    groups["Operator"].permissions.set([*operator_perms, *audit_view])
    user_perms = Permission.objects.filter(content_type__app_label="auth")
    groups["Admin"].permissions.set([*operator_perms, *audit_view, *user_perms])


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, remove_roles)]
