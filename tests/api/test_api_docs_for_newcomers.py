"""The API reference as a new user reads it: choice lists in words (no raw markdown), and where the first
API token comes from, said in the schema's description and at the top of /api/docs/."""

from __future__ import annotations

import json

from django.urls import reverse

from webapp.api.schema import choices_in_words


def test_choice_lists_become_one_sentence_with_labels_only_where_they_say_more():
    markdown = "Filter by kind.\n\n* `provision` - Provision\n* `clean` - Wipe\n* `fake` - Fake (tests)"
    assert choices_in_words(markdown) == "Filter by kind.\n\nOne of: provision, clean (wipe), fake (tests)."
    assert choices_in_words("* `waiting` - Waiting for capacity") == "One of: waiting (for capacity)."
    assert choices_in_words("* `burning_in` - Burning in") == "One of: burning_in."
    assert choices_in_words("No choices here.") == "No choices here."


def test_the_schema_has_no_markdown_choice_lists_and_says_where_the_first_token_comes_from(client, db):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    text = json.dumps(schema)
    assert "* `" not in text
    assert schema["components"]["schemas"]["KindEnum"]["description"] == (
        "One of: provision, reimage, release, clean (wipe), burnin, power, warm_up."
    )
    admin_nodes = schema["paths"]["/api/v1/admin/nodes/"]["get"]["parameters"]
    power = next(p for p in admin_nodes if p["name"] == "power")
    assert power["description"] == "One of: on, off, unknown."
    description = schema["info"]["description"]
    assert reverse("portal:api_tokens") in description and "session" in description


def test_the_docs_page_explains_the_first_token_before_anything_else(client, db):
    html = client.get("/api/docs/").content.decode()
    start = html.index('id="getting-started"')
    assert start < html.index("<h2>Endpoints</h2>")
    section = html[start : html.index("</section>", start)]
    assert f'href="{reverse("portal:api_tokens")}"' in section
    assert "X-CSRFToken" in section and "Authorization: Bearer" in section
    assert "* `" not in html and "One of: on, off, unknown." in html
    assert '<meta name="viewport"' in html and 'rel="icon"' in html
