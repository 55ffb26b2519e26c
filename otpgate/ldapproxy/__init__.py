"""The LDAP bind proxy front end."""
