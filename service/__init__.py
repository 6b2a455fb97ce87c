"""pmstore's service layer: the command line now; the REST app arrives with its issue."""
