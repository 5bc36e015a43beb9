"""Network boot: iPXE scripts, dnsmasq configuration, the image catalog and the deploy agent."""
