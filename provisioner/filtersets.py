"""How nodes are filtered, once for every caller (NetBox's ``filtersets.py``): the operator API's
``/api/v1/admin/nodes?state=&site=&server_type=&power=&q=``, the portal's fleet page and a rolling
reimage's ``filter``. Each caller keeps its own wording for a value the set refuses; the set decides what
a value means and what it matches.

A bound set with a bad value still filters by its good ones: ``qs`` applies the fields that validated
(the portal shows the others as errors; the API refuses the request with a 400 before reading ``qs``).
"""

from __future__ import annotations

import django_filters

from provisioner.models import Node
from provisioner.states import NodeState, PowerStateChoice


class NodeFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=NodeState.choices, empty_label="All states")
    site = django_filters.CharFilter(field_name="rack__site__slug", help_text="site slug")
    server_type = django_filters.CharFilter(field_name="server_type__slug", help_text="server type slug")
    power = django_filters.ChoiceFilter(field_name="power_state", choices=PowerStateChoice.choices)
    q = django_filters.CharFilter(
        field_name="name", lookup_expr="icontains", label="Name", help_text="part of the node's name"
    )

    class Meta:
        model = Node
        fields = ["state", "site", "server_type", "power", "q"]
