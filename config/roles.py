"""Roles are Django groups, created and granted their permissions by migrations.

Each app's migration calls :func:`grant` with the permissions of its own models, so the role
matrix grows with the apps and every database gets the same groups.
"""

from __future__ import annotations

ROLES = (
    "compliance_officer",
    "partnership_manager",
    "operations",
    "finance",
    "auditor",
    "origination",
)


def grant(apps, mapping: dict[str, list[str]]) -> None:
    """Create the groups and give each the ``app_label.codename`` permissions listed for it.

    Meant for ``RunPython`` in a migration: permissions are created first (Django only creates
    them after all migrations ran, which is too late for a data migration).
    """
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        # A migration's historical app configs have no models_module, and create_permissions
        # skips those; lend them one for the call.
        original = getattr(app_config, "models_module", None)
        app_config.models_module = original or True
        try:
            create_permissions(app_config, apps=apps, verbosity=0)
        finally:
            app_config.models_module = original

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role in ROLES:
        Group.objects.get_or_create(name=role)
    for role, perms in mapping.items():
        group = Group.objects.get(name=role)
        for perm in perms:
            app_label, codename = perm.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def revoke(apps, mapping: dict[str, list[str]]) -> None:
    """The reverse of :func:`grant` (groups stay; they may hold other apps' permissions)."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, perms in mapping.items():
        group = Group.objects.filter(name=role).first()
        if group is None:
            continue
        for perm in perms:
            app_label, codename = perm.split(".")
            group.permissions.remove(*Permission.objects.filter(content_type__app_label=app_label, codename=codename))
