from django.urls import path, re_path

from provisioner.boot import views

urlpatterns = [
    # Any name: the view refuses what is not a MAC with an iPXE script that says so (a narrower pattern
    # here answered other notations, such as 5254.0000.0001, with the site's HTML 404 page).
    re_path(r"^(?P<mac>[^/]{1,64})\.ipxe$", views.ipxe_script, name="boot-ipxe"),
    path("deploy/vmlinuz", views.deploy_kernel, name="boot-kernel"),
    path("deploy/initrd.img", views.deploy_initrd, name="boot-initrd"),
    path("api/instructions", views.agent_instructions, name="boot-agent-instructions"),
    path("api/progress", views.agent_progress, name="boot-agent-progress"),
    path("api/result", views.agent_result, name="boot-agent-result"),
    path("api/heartbeat", views.agent_heartbeat, name="boot-agent-heartbeat"),
    path("api/tickets/<int:ticket_id>", views.ticket_status, name="boot-ticket-status"),
]
