"""Create the roles and grant them what they may do with partners and contracts.

Partnership managers draft and submit; compliance officers approve, reject and terminate;
operations, finance and auditors read. The origination account gets nothing here.
"""

from django.db import migrations

from config.roles import grant, revoke

READ = ["partners.view_partner", "partners.view_contract"]
PERMISSIONS = {
    "compliance_officer": [
        *READ,
        "partners.approve_contract",
        "partners.terminate_contract",
        "partners.change_partner_status",
    ],
    "partnership_manager": [
        *READ,
        "partners.add_partner",
        "partners.change_partner",
        "partners.change_partner_status",
        "partners.add_contract",
        "partners.change_contract",
        "partners.submit_contract",
        "partners.terminate_contract",
    ],
    "operations": READ,
    "finance": READ,
    "auditor": READ,
}


def forwards(apps, schema_editor):
    grant(apps, PERMISSIONS)


def backwards(apps, schema_editor):
    revoke(apps, PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [
        ("partners", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
