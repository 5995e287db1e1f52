"""Operators (and Admins) edit graders, judge prompts, shadow candidates and sweep schedules
(django-celery-beat) in Django admin; they may view sweep runs and proposals there."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

EDITABLE = ["graderconfig", "judgeprompt", "prompttemplate", "shadowconfig"]
VIEW_ONLY = ["sweeprun", "proposal"]


def grant(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    perms = [
        *Permission.objects.filter(
            content_type__app_label="evaluation", content_type__model__in=EDITABLE
        ),
        *Permission.objects.filter(
            content_type__app_label="evaluation",
            content_type__model__in=VIEW_ONLY,
            codename__startswith="view_",
        ),
        *Permission.objects.filter(content_type__app_label="django_celery_beat"),
    ]
    for name in ("Operator", "Admin"):
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*perms)


def revoke(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    perms = Permission.objects.filter(content_type__app_label__in=["evaluation", "django_celery_beat"])
    for group in Group.objects.filter(name__in=["Operator", "Admin"]):
        group.permissions.remove(*perms)


class Migration(migrations.Migration):
    dependencies = [
        ("evaluation", "0001_initial"),
        ("controlplane", "0002_roles"),
        ("django_celery_beat", "0016_alter_crontabschedule_timezone"),
    ]
    operations = [migrations.RunPython(grant, revoke)]
