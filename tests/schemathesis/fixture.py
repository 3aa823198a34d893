"""Makes the records tests/schemathesis/run.sh pins path parameters to, and
writes its schemathesis configuration.

Usage: fixture.py BASE_URL CA_FILE OUT_TOML BUDGET_SECONDS"""
import json
import ssl
import sys
import time
import urllib.request

base, ca, out, budget = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
for _ in range(200):
    try:
        urllib.request.urlopen(base + "/readyz", context=ctx).read()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"no router answers at {base}")


def post(path, body=None, token=None):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body or {}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, context=ctx) as r:
        return json.load(r)


key = "dev-acme-key"
a = post("/v1/conferences", {"waiting_room": True}, key)
p = post(f"/v1/conferences/{a['id']}/join", {"passcode": a["passcode"], "display_name": "Ann"})
w = post(f"/v1/conferences/{a['id']}/join", {"passcode": a["passcode"], "display_name": "Wes"})
post(f"/v1/conferences/{a['id']}/waiting/{w['participant_id']}/deny", None, key)
e = post("/v1/conferences", {}, key)
accepted = '["2xx", "3xx", "401", "403", "404", "409", "429", %s]'
with open(out, "w") as f:
    f.write(
        f'''
max-time = {int(budget)}
workers = 1
tls-verify = "{ca}"
headers = {{ Authorization = "Bearer {key}" }}

[generation]
# Display names and reasons are limited in bytes of UTF-8 (what relays
# carry), which maxLength counts exactly only for ASCII.
codec = "ascii"
database = "none"

[checks.ensure_resource_availability]
# Path parameters are pinned: a conference created on the way is not the
# one the next call names.
enabled = false

[parameters]
id = "{a['id']}"
pid = "{p['participant_id']}"
relay = "de-fra-1"

[[operations]]
include-tag = "admin"
headers = {{ Authorization = "Bearer dev-admin-key" }}

# A jurisdiction another router serves: 421 with its router_url.
[[operations]]
include-name = "POST /v1/conferences"
checks = {{ positive_data_acceptance = {{ expected-statuses = {accepted % '"421"'} }} }}

# The waiting participant's poll, as W (turned away: answered at once).
[[operations]]
include-name = "GET /v1/conferences/{{id}}/waiting/{{pid}}"
headers = {{ Authorization = "Bearer {w['wait_token']}" }}
parameters = {{ pid = "{w['participant_id']}" }}

# The public listener answers relay reports 421 wrong_listener before
# reading them (relays report on relay_listen).
[[operations]]
include-name = "POST /v1/relays/{{relay}}/report"
checks = {{ positive_data_acceptance = {{ expected-statuses = {accepted % '"421"'} }}, negative_data_rejection = {{ expected-statuses = ["400", "401", "403", "404", "421", "429"] }} }}

[[operations]]
include-path = "/v1/conferences/{{id}}/end"
parameters = {{ id = "{e['id']}" }}
checks = {{ positive_data_acceptance = {{ expected-statuses = {accepted % '"410"'} }} }}
'''
    )
