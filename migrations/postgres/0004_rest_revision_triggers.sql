-- A REST write and the revision bump that announces it to the other replicas commit together:
-- written by the application as two statements, a crash or failure between them left an object
-- stored that no other replica would serve until some later write moved the revision.
CREATE OR REPLACE FUNCTION bump_catalog_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP <> 'DELETE' AND NEW.source = 'rest') OR (TG_OP <> 'INSERT' AND OLD.source = 'rest') THEN
        UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS api_specs_rest_revision ON api_specs;
CREATE TRIGGER api_specs_rest_revision AFTER INSERT OR UPDATE OR DELETE ON api_specs
    FOR EACH ROW EXECUTE FUNCTION bump_catalog_revision();
DROP TRIGGER IF EXISTS workflows_rest_revision ON workflows;
CREATE TRIGGER workflows_rest_revision AFTER INSERT OR UPDATE OR DELETE ON workflows
    FOR EACH ROW EXECUTE FUNCTION bump_catalog_revision();
DROP TRIGGER IF EXISTS cli_tools_rest_revision ON cli_tools;
CREATE TRIGGER cli_tools_rest_revision AFTER INSERT OR UPDATE OR DELETE ON cli_tools
    FOR EACH ROW EXECUTE FUNCTION bump_catalog_revision();
DROP TRIGGER IF EXISTS security_contexts_rest_revision ON security_contexts;
CREATE TRIGGER security_contexts_rest_revision AFTER INSERT OR UPDATE OR DELETE ON security_contexts
    FOR EACH ROW EXECUTE FUNCTION bump_catalog_revision();
