from backend.tests.helpers import add_member, create_user, default_org, setup_admin


async def test_first_admin_org_viewer_refused_write(client):
    """The foundation's acceptance path: setup, login, org, viewer, write refused."""
    admin = await setup_admin(client)
    org = await client.post("/api/v1/organizations", json={"name": "second"}, headers=admin.headers)
    assert org.status_code == 201, org.text
    org_id = org.json()["id"]
    viewer = await create_user(client, admin, "viewer@example.com")
    await add_member(client, admin, org_id, viewer, "viewer")

    listed = await client.get(f"/api/v1/organizations/{org_id}/members", headers=viewer.headers)
    assert listed.status_code == 200
    assert {m["email"] for m in listed.json()["items"]} == {"admin@example.com", "viewer@example.com"}

    refused = await client.patch(f"/api/v1/organizations/{org_id}", json={"name": "hijacked"}, headers=viewer.headers)
    assert refused.status_code == 403
    assert refused.json()["code"] == "role_required"
    # the viewer's default organisation is the only one it belongs to; the admin's first org is invisible to it
    assert await default_org(client, viewer) == org_id
    other = await default_org(client, admin)
    assert (await client.get(f"/api/v1/organizations/{other}", headers=viewer.headers)).status_code == 404
