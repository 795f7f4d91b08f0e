"""HTTP request pipeline shared by every framework adapter."""
