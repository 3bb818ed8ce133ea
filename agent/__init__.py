"""cp-agent: runs the instances bound to one machine as Docker containers."""
