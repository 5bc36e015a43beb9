from django.urls import path, re_path

from provisioner.boot import views

urlpatterns = [
    re_path(r"^(?P<mac>[0-9A-Fa-f:-]{17})\.ipxe$", views.ipxe_script, name="boot-ipxe"),
    path("deploy/vmlinuz", views.deploy_kernel, name="boot-kernel"),
    path("deploy/initrd.img", views.deploy_initrd, name="boot-initrd"),
    path("api/instructions", views.agent_instructions, name="boot-agent-instructions"),
    path("api/progress", views.agent_progress, name="boot-agent-progress"),
    path("api/result", views.agent_result, name="boot-agent-result"),
    path("api/tickets/<int:ticket_id>", views.ticket_status, name="boot-ticket-status"),
]
